"""Fine-tune a pretrained model (Hub id or local folder) on a recipe with the DeepSpeed engine.

    python finetune.py --from runs/x/export --recipe my-task.yaml
    deepspeed --num_gpus 4 finetune.py --from my-org/deeperbrain --recipe my-task.yaml
"""
import sys

from foundation.cli import script_main

if __name__ == "__main__":
    script_main(["finetune", *sys.argv[1:]])

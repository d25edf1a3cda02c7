"""Pretrain a recipe with the DeepSpeed engine.

    python pretrain.py --recipe deeperbrain-tiny                        # one process
    deepspeed --num_gpus 8 pretrain.py --recipe slim-brain --set train.lr=3e-4
    deepspeed --hostfile hosts.txt pretrain.py --recipe slim-brain      # several nodes
    python pretrain.py --recipe runs/x/recipe.yaml --output-dir runs/x --resume
"""
import sys

from foundation.cli import script_main

if __name__ == "__main__":
    script_main(["pretrain", *sys.argv[1:]])

"""Training: recipes, losses (incl. DeiT and BinaryViT distillation), the loop, resumable
run folders, fine-tuning and multi-GPU runs. The API the CLI and the benchmark harness use:

    from vitgraph.train import run, evaluate
    result = run("specs/vit.vg", "digits")          # -> {"top1", "top5", "train_img_per_s", ...}
    evaluate("specs/vit.vg", "runs/.../best.pt", "digits")

See vitgraph/train/loop.py for every argument. Importing this package imports torch.
"""
from .loop import evaluate, run
from .recipes import Recipe, load_recipe, recipe_names

__all__ = ["run", "evaluate", "Recipe", "load_recipe", "recipe_names"]

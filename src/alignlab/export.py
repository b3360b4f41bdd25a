"""Export a trained policy as a plain Hugging Face model (LoRA merged into the base weights).

    python -m alignlab.export <run_dir>/policy <out_dir>

The result loads with ``AutoModelForCausalLM.from_pretrained(out_dir)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alignlab.utils.errors import cli_app


def export_merged(policy_dir: str | Path, out_dir: str | Path) -> Path:
    policy_dir, out_dir = Path(policy_dir), Path(out_dir)
    if not policy_dir.is_dir():
        raise FileNotFoundError(f"{policy_dir}: not a directory; pass <run_dir>/policy from a finished run")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (policy_dir / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(policy_dir).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(policy_dir)
    tok = AutoTokenizer.from_pretrained(policy_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


@cli_app("alignlab-export")
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy_dir", help="a saved policy directory (adapter or full model)")
    ap.add_argument("out_dir", help="where the merged Hugging Face model is written")
    a = ap.parse_args(argv)
    try:
        out = export_merged(a.policy_dir, a.out_dir)
    except (FileNotFoundError, OSError, ValueError) as e:
        print(f"alignlab-export: {e}", file=sys.stderr)
        return 2
    print(f"merged model written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m adflora_analysis`` (also what ``torchrun -m adflora_analysis`` starts)."""

from adflora_analysis.cli import main

if __name__ == "__main__":
    main()

"""Run every benchmark: ``python -m deeprecipe.bench``."""

from deeprecipe.bench import augment, overhead

if __name__ == "__main__":
    overhead.main([])
    augment.main([])

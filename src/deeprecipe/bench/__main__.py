"""Run every benchmark: ``python -m deeprecipe.bench``."""

from deeprecipe.bench import augment, ddp, overhead

if __name__ == "__main__":
    overhead.main([])
    augment.main([])
    ddp.main([])

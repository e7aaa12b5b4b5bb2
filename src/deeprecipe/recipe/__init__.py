"""The lecture's debugging recipe as commands: ``python -m deeprecipe.recipe STEP [overrides]``
(see :mod:`deeprecipe.recipe.__main__`) and ``python -m deeprecipe.recipe.model_report``."""

"""The lecture's debugging recipe as commands (``python -m deeprecipe.recipe.NAME``)."""

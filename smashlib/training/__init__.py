"""Training shared by the distiller and the recoverer: one loop (:func:`train_to_match`), one data recipe."""
from smashlib.training.data import SEQUENCE_LENGTH, fitting_length, training_batches
from smashlib.training.loop import TrainingLog, TrainingOptions, train_to_match, watch_training

__all__ = ["SEQUENCE_LENGTH", "TrainingLog", "TrainingOptions",
    "fitting_length", "train_to_match", "training_batches", "watch_training"]

"""Building the index: notes → passages → vectors → a new generation (`build`),
and rebuilding it when the notes change (`watch`)."""

"""The one exception type of `keras_bninception.data`."""


class DataError(ValueError):
    """A dataset cannot be used as asked; the message is one line saying why and what to do.

    Raised for an unknown dataset name, missing manual-download files, an empty or unreadable image
    folder, a corrupt image file (named in the message) and out-of-range pipeline arguments.
    """

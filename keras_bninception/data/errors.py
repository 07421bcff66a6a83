"""The one exception type of `keras_bninception.data`, and reading data errors out of TF ones."""

import re


class DataError(ValueError):
    """A dataset cannot be used as asked; the message is one line saying why and what to do.

    Raised for an unknown dataset name, missing manual-download files, an empty or unreadable image
    folder, a corrupt image file (named in the message) and out-of-range pipeline arguments.
    """


# The assertion message of the header check on every encoded image
# (keras_bninception.data.pipeline._checked).
CORRUPT_FILE_ASSERTION = "corrupt image file (not a JPEG, PNG, GIF or BMP):"
_CORRUPT_FILE = re.compile(re.escape(f"[{CORRUPT_FILE_ASSERTION}] [") + r"(.*?)\]")
# ... and of the decoding check (an image header, then data that does not decode).
UNDECODABLE = "its data does not decode (truncated or damaged)"
UNDECODABLE_FILE_ASSERTION = "corrupt image file (data does not decode):"
_UNDECODABLE_FILE = re.compile(re.escape(f"[{UNDECODABLE_FILE_ASSERTION}] [") + r"(.*?)\]")
_DECODE_FAILURES = ("Invalid JPEG data", "Invalid PNG data", "Unknown image file format")


def explain_error(error: BaseException) -> DataError | None:
    """Turns an error raised while iterating a pipeline into a one-line `DataError`, if it is one.

    Streamed splits check each file's header, then whether its data decodes, in the graph; a file
    that fails stops the iteration with a `tf.errors.InvalidArgumentError` whose long message
    holds the path. This returns `DataError("corrupt image file <path>: ...")` for it, a
    `DataError` for other image decoding failures, and None for errors that are not about the data.
    """
    text = str(getattr(error, "message", None) or error)
    match = _CORRUPT_FILE.search(text)
    if match:
        return DataError(f"corrupt image file {match.group(1)}: not a JPEG, PNG, GIF or BMP file")
    match = _UNDECODABLE_FILE.search(text)
    if match:
        return DataError(f"corrupt image file {match.group(1)}: {UNDECODABLE}")
    for failure in _DECODE_FAILURES:
        if failure in text:
            detail = " ".join(text[text.index(failure) :].split("[[")[0].split())
            return DataError(f"an image could not be decoded: {detail}")
    return None

"""Rebuilds imagenet_class_index.json (Keras' format) from files shipped on PyPI.

The class order is ImageNet-1k's (ILSVRC-2012) sorted WordNet ids, as listed by
``timm/data/_info/imagenet_synsets.txt`` (and, identically, by tensorflow-datasets'
``imagenet2012/labels.txt``); each class's name is the first lemma of its WordNet synset in
``timm/data/_info/imagenet_synset_to_lemma.txt`` with spaces replaced by underscores. That rule
reproduces Keras' ``imagenet_class_index.json`` byte for byte (its MD5 is the one Keras pins,
checked by ``tests/test_imagenet_utils.py``). Nothing is downloaded at run time: the JSON file is
package data.

Usage (from the repository root; ``pip download`` needs only the package index)::

    python -m pip download --no-deps --dest /tmp/timm_wheel timm==1.0.31
    python keras_bninception/resources/build_imagenet_class_index.py \
        /tmp/timm_wheel/timm-1.0.31-py3-none-any.whl
"""

import argparse
import json
import pathlib
import zipfile

_SYNSETS = "timm/data/_info/imagenet_synsets.txt"
_LEMMAS = "timm/data/_info/imagenet_synset_to_lemma.txt"
_OUTPUT = pathlib.Path(__file__).with_name("imagenet_class_index.json")


def build(wheel: str) -> dict[str, list[str]]:
    with zipfile.ZipFile(wheel) as archive:
        synsets = archive.read(_SYNSETS).decode().split()
        lemmas = dict(
            line.split("\t", 1) for line in archive.read(_LEMMAS).decode().splitlines() if line
        )
    if len(synsets) != 1000 or len(set(synsets)) != 1000:
        raise ValueError(f"Expected 1000 distinct synsets in {_SYNSETS}, got {len(synsets)}.")
    names = [lemmas[s].split(",")[0].strip().replace(" ", "_") for s in synsets]
    return {str(i): [s, n] for i, (s, n) in enumerate(zip(synsets, names, strict=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("wheel", help="path of a downloaded timm wheel")
    args = parser.parse_args()
    # json.dumps' default separators and no trailing newline: Keras' exact bytes.
    _OUTPUT.write_text(json.dumps(build(args.wheel)))
    print(f"wrote {_OUTPUT}")


if __name__ == "__main__":
    main()

"""`weights="imagenet"`: download once, check, unpack safely, load, through a local HTTP server.

The published tarball is replaced by one of the same layout (``inception_v2.ckpt``, a V1
checkpoint) holding tf_slim's own inception_v2 with random values at depth multiplier 0.25
(tests/tf_slim_reference.py), served from 127.0.0.1; `imagenet.IMAGENET` (the URL, size, SHA-384
and depth multiplier of the published file) is monkeypatched to describe it, and ``KERAS_HOME``
points at a temporary directory. Nothing touches the internet.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import tarfile
import threading

import export_helpers
import helpers
import numpy as np
import pytest
import tf_slim_reference

from keras_bninception import decode_predictions, weights
from keras_bninception.models import BNInception
from keras_bninception.training import init_checkpoint as ic
from keras_bninception.weights import WeightsError, imagenet

SIZE, DEPTH = 32, 0.25
NAME = "inception_v2_2016_08_28.tar.gz"


def _tarball(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


class _Server:
    """Serves `files` (URL path -> bytes) on 127.0.0.1 and counts the requests."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def archive(self, path: str, **changes) -> imagenet.Archive:
        """The `imagenet.Archive` of the file served at `path`."""
        body = self.files[path]
        values = dict(
            url=f"http://127.0.0.1:{self.httpd.server_address[1]}{path}",
            size=len(body),
            sha384=hashlib.sha384(body).hexdigest(),
            depth_multiplier=DEPTH,
        )
        return imagenet.Archive(**{**values, **changes})

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def slim(tmp_path_factory):
    return tf_slim_reference.build_checkpoint(
        tmp_path_factory.mktemp("slim"),
        image_size=SIZE,
        batch_size=2,
        depth_multiplier=DEPTH,
        seed=7,
        write_version="V1",
    )


@pytest.fixture(scope="module")
def server(slim):
    with open(slim.checkpoint, "rb") as f:
        checkpoint = f.read()
    served = _Server(
        {
            f"/good/{NAME}": _tarball({"inception_v2.ckpt": checkpoint}),
            f"/dotdot/{NAME}": _tarball({"inception_v2.ckpt": checkpoint, "../escaped": b"x"}),
            f"/link/{NAME}": _tarball(
                {"inception_v2.ckpt": checkpoint}, links={"inception_v2.ckpt.index": "/etc/passwd"}
            ),
            f"/empty/{NAME}": _tarball({"README": b"no checkpoint here"}),
        }
    )
    yield served
    served.close()


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


def _use(monkeypatch, archive: imagenet.Archive) -> None:
    monkeypatch.setattr(imagenet, "IMAGENET", archive)


def _tree(directory) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(root, name), directory)
        for root, dirs, names in os.walk(directory)
        for name in names + dirs
    )


def _model(**kwargs):
    return BNInception(
        weights="imagenet", input_shape=(SIZE, SIZE, 3), depth_multiplier=DEPTH, **kwargs
    )


def test_download_once_then_cache_hit(server, slim, keras_home, monkeypatch):
    server.requests.clear()
    _use(monkeypatch, server.archive(f"/good/{NAME}"))
    tf_slim_outputs = _model(classes=1001, classifier_activation=None)
    assert server.requests == [f"/good/{NAME}"]
    np.testing.assert_allclose(tf_slim_outputs(slim.images), slim.logits, rtol=1e-4, atol=1e-4)
    assert _tree(keras_home) == sorted(
        [
            "models",
            f"models/{NAME}",
            "models/inception_v2_2016_08_28",
            "models/inception_v2_2016_08_28/inception_v2.ckpt",
        ]
    )

    # The cache answers from now on: classes=1000 (the default) leaves TF-slim's background
    # class 0 out, so the probabilities are ImageNet's 1000 classes in Keras' order.
    keras_outputs = _model()
    probabilities = np.asarray(keras_outputs(slim.images))
    assert server.requests == [f"/good/{NAME}"]
    assert probabilities.shape == (2, 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    expected = np.exp(slim.logits[:, 1:]) / np.exp(slim.logits[:, 1:]).sum(1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-3, atol=1e-6)
    top = decode_predictions(probabilities, top=3)[0]
    assert [name for _, name, _ in top] == [
        decode_predictions(expected, top=3)[0][i][1] for i in range(3)
    ]

    # Features: include_top=False with pooling.
    features = BNInception(
        weights="imagenet", include_top=False, pooling="avg", depth_multiplier=DEPTH
    )(slim.images)
    assert tuple(features.shape) == (2, 1024 * DEPTH)
    assert server.requests == [f"/good/{NAME}"]


def test_local_tarball_needs_no_network(server, slim, keras_home, monkeypatch, tmp_path):
    server.requests.clear()
    _use(monkeypatch, server.archive(f"/good/{NAME}"))
    local = tmp_path / NAME
    local.write_bytes(server.files[f"/good/{NAME}"])
    model = BNInception(
        weights=str(local), input_shape=(SIZE, SIZE, 3), depth_multiplier=DEPTH, classes=1001
    )
    assert server.requests == []
    assert model.output.shape[-1] == 1001
    assert local.exists()  # a user's own file is never deleted
    # The unpacked checkpoint is the cache's: "imagenet" finds it without a request.
    _model()
    assert server.requests == []


def test_wrong_hash_deletes_the_download(server, keras_home, monkeypatch):
    good = server.archive(f"/good/{NAME}")
    _use(monkeypatch, server.archive(f"/good/{NAME}", sha384="0" * 96))
    with pytest.raises(WeightsError) as error:
        _model()
    message = str(error.value)
    assert f"expected SHA-384 {'0' * 96} ({good.size:,} bytes)" in message
    assert f"got SHA-384 {good.sha384} ({good.size:,} bytes)" in message
    assert "deleted it, download again from http://127.0.0.1:" in message
    assert _tree(keras_home) == ["models"]  # nothing downloaded or unpacked is left

    # The wrong size is caught too, with the same message.
    _use(monkeypatch, server.archive(f"/good/{NAME}", size=41_577_079))
    with pytest.raises(WeightsError, match=r"expected SHA-384 \w+ \(41,577,079 bytes\), got"):
        _model()
    assert _tree(keras_home) == ["models"]


def test_no_server_is_one_clear_error(keras_home, monkeypatch):
    port = helpers.free_ports(1)[0]
    _use(
        monkeypatch,
        imagenet.Archive(url=f"http://127.0.0.1:{port}/{NAME}", size=1, sha384="0" * 96),
    )
    with pytest.raises(WeightsError) as error:
        weights.resolve("imagenet")
    message = str(error.value)
    assert message.startswith(f"Cannot download the ImageNet weights from http://127.0.0.1:{port}")
    assert '(or that of the unpacked inception_v2.ckpt) instead of "imagenet"' in message
    assert f'weights="/path/to/{NAME}" or --init_checkpoint=/path/to/{NAME}' in message
    assert message.endswith(f"or put it in {keras_home / 'models'}")
    assert "\n" not in message
    assert _tree(keras_home) == ["models"]


@pytest.mark.parametrize(
    "path, refused",
    [("dotdot", "'../escaped'"), ("link", "'inception_v2.ckpt.index'"), ("empty", None)],
)
def test_unsafe_or_empty_archives_are_refused(server, keras_home, monkeypatch, path, refused):
    _use(monkeypatch, server.archive(f"/{path}/{NAME}"))
    outside = sorted(os.listdir(keras_home.parent))
    message = f"member {refused} is a link" if refused else "holds no inception_v2.ckpt"
    with pytest.raises(WeightsError, match=message):
        _model()
    # Nothing unpacked: neither outside the cache nor inside it (only the checked download).
    assert sorted(os.listdir(keras_home.parent)) == outside
    assert not any(p.name == "escaped" for p in keras_home.parent.rglob("*"))
    assert _tree(keras_home) == ["models", f"models/{NAME}"]


def test_trainer_init_checkpoint_imagenet(server, slim, keras_home, monkeypatch):
    server.requests.clear()
    _use(monkeypatch, server.archive(f"/good/{NAME}"))
    source = ic.resolve_init_source("imagenet")
    assert (source.kind, source.num_classes) == (ic.TF_SLIM, 1001)
    assert source.path == str(keras_home / "models/inception_v2_2016_08_28/inception_v2.ckpt")
    model = BNInception(
        weights=None,
        input_shape=(SIZE, SIZE, 3),
        classes=10,
        classifier_activation=None,
        depth_multiplier=DEPTH,
        slim_compatible=True,
    )
    report = ic.load_init_checkpoint(model, source)
    assert report.left_at_init == ("Logits/Conv2d_1c_1x1/biases", "Logits/Conv2d_1c_1x1/weights")
    assert len(server.requests) == 1


@pytest.mark.slow
def test_export_tf_slim_checkpoint_imagenet(server, slim, keras_home, monkeypatch, tmp_path):
    import tensorflow as tf

    server.requests.clear()
    _use(monkeypatch, server.archive(f"/good/{NAME}"))
    out = tmp_path / "out"
    info = export_helpers.run_export_binary(
        "--tf_slim_checkpoint=imagenet",
        f"--image_size={SIZE}",
        "--formats=saved_model",
        f"--export_dir={out}",
    )
    assert len(server.requests) == 1
    assert info["num_classes"] == 1001
    assert info["source"]["path"].startswith(str(keras_home))
    loaded = tf.saved_model.load(str(out / "saved_model"))
    pixels = (slim.images + 1.0) * 127.5
    answer = loaded.signatures["serving_default"](images=tf.constant(pixels, tf.float32))
    expected = tf.nn.softmax(slim.logits).numpy()
    np.testing.assert_allclose(answer["probabilities"].numpy(), expected, atol=1e-4, rtol=0)


def test_classify_defaults_to_imagenet(server, slim, keras_home, monkeypatch):
    import sklearn.datasets

    from keras_bninception import classify
    from keras_bninception.imagenet_utils import imagenet_classes
    from trainers import classify as binary

    server.requests.clear()
    _use(monkeypatch, server.archive(f"/good/{NAME}"))
    binary.FLAGS.unparse_flags()
    binary.FLAGS(["classify", f"--image_size={SIZE}"])  # no source: the ImageNet weights
    try:
        classifier = binary.load_classifier()
    finally:
        binary.FLAGS.unparse_flags()
    assert server.requests == [f"/good/{NAME}"]
    assert classifier.class_names == [name for _, name in imagenet_classes()]
    photo = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", "china.jpg")
    results, failures = classify.classify_files(classifier, [photo], k=5)
    assert failures == {} and len(results[photo]) == 5
    top = results[photo]
    assert all(0 <= p.class_id < 1000 for p in top)
    assert [p.label for p in top] == [classifier.class_names[p.class_id] for p in top]
    assert top[0].probability >= top[-1].probability > 0

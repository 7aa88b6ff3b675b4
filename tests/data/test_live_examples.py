"""Captured request bodies back into examples: TF Serving's request forms, and what is skipped and why."""

from __future__ import annotations

import base64
import json

import numpy as np

from pipeline.data.live_examples import LabelledRequest, decode_requests


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(28, 28)).astype(np.uint8)


def _scaled(image: np.ndarray) -> list[float]:
    return (image.reshape(-1).astype(np.float32) / np.float32(255)).tolist()


def test_images_in_every_request_form_come_back_as_exact_pixels():
    images = [_pixels(i) for i in range(4)]
    bodies = [
        {"instances": [_scaled(images[0])]},  # REST row form
        {"signature_name": "serving_default", "instances": [{"x": _scaled(images[1])}]},  # named input
        {"inputs": {"x": [_scaled(images[2])]}},  # columnar, as a gRPC request is stored
        {"inputs": [_scaled(images[3])]},
    ]
    requests = [LabelledRequest(f"r{i}", json.dumps(body), i % 3) for i, body in enumerate(bodies)]
    decoded = decode_requests(requests, "image", ("a", "b", "c"))
    assert decoded.request_ids == ["r0", "r1", "r2", "r3"] and not decoded.skipped
    assert all(np.array_equal(got, want) for got, want in zip(decoded.examples.x, images, strict=True))
    assert decoded.examples.y.tolist() == [0, 1, 2, 0]


def test_what_cannot_be_an_example_is_skipped_by_reason():
    good = _scaled(_pixels(0))
    requests = [
        LabelledRequest("kept-as-hash", None, 0),
        LabelledRequest("batch", json.dumps({"instances": [good, good]}), 0),
        LabelledRequest("not-json", "{", 0),
        LabelledRequest("raw-pixels", json.dumps({"instances": [[v * 255 for v in good]]}), 0),
        LabelledRequest("off-grid", json.dumps({"instances": [[0.5 / 255] * 784]}), 0),
        LabelledRequest("short", json.dumps({"instances": [[0.0] * 100]}), 0),
        LabelledRequest("label", json.dumps({"instances": [good]}), 5),
        LabelledRequest("ok", json.dumps({"instances": [good]}), 1),
    ]
    decoded = decode_requests(requests, "image", ("a", "b"))
    assert decoded.request_ids == ["ok"]
    assert dict(decoded.skipped) == {"inputs_not_kept": 1, "batched": 1, "undecodable": 4, "unknown_label": 1}
    assert len(decoded.skipped_ids) == 7


def test_texts_plain_named_and_base64():
    bodies = [{"instances": ["win money now"]}, {"instances": [{"text": "lunch at noon"}]},
              {"inputs": {"text": [{"b64": base64.b64encode("café menu".encode()).decode()}]}},
              {"instances": [12]}]
    decoded = decode_requests([LabelledRequest(f"r{i}", json.dumps(b), 1) for i, b in enumerate(bodies)], "text",
                              ("ham", "spam"))
    assert decoded.examples.x.tolist() == ["win money now", "lunch at noon", "café menu"]
    assert dict(decoded.skipped) == {"undecodable": 1}

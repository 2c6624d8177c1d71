#!/usr/bin/env python
"""REST client for the bundled ``digits`` model, in the style of the
TensorFlow Serving tutorial clients.

Sends the first N images of the digits test split to a TF-Serving-compatible
``:predict`` endpoint and compares the predicted digits with the true labels.

Usage:
    python examples/client.py [--server localhost:8501] [--model_name digits]
                              [--num_images 10]

Only numpy, requests and scikit-learn are imported (no TensorFlow).
"""

import argparse
import sys

import numpy as np
import requests
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def load_test_split():
    """Same preprocessing and split as examples/train_digits.py."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    _, x_test, _, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    return x_test, y_test


def fail(message):
    print("ERROR: %s" % message, file=sys.stderr)
    sys.exit(1)


def predict(url, images, timeout):
    payload = {"instances": images.tolist()}
    try:
        resp = requests.post(url, json=payload, timeout=timeout)
    except requests.exceptions.RequestException as exc:
        fail("cannot reach server at %s: %s" % (url, exc))

    try:
        body = resp.json()
    except ValueError:
        body = None

    if resp.status_code != 200 or not isinstance(body, dict) or "error" in body:
        if isinstance(body, dict) and "error" in body:
            detail = body["error"]
        else:
            detail = resp.text.strip() or "(empty response body)"
        fail("server returned HTTP %d: %s" % (resp.status_code, detail))

    if "predictions" not in body:
        fail("response has no 'predictions' field: %s" % resp.text.strip())

    predictions = body["predictions"]
    # A single-output model answers with a list of rows; tolerate the
    # named-output form ({"probabilities": [...]}) for each row as well.
    rows = []
    for row in predictions:
        if isinstance(row, dict):
            if len(row) != 1:
                fail("expected one output per instance, got %s" % sorted(row))
            row = next(iter(row.values()))
        rows.append(row)
    probs = np.asarray(rows, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != len(images):
        fail("unexpected predictions shape %s for %d images"
             % (probs.shape, len(images)))
    return probs


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Query a TF-Serving-compatible server with digits test images.")
    parser.add_argument("--server", default="localhost:8501",
                        help="REST host:port of the server (default: %(default)s)")
    parser.add_argument("--model_name", default="digits",
                        help="model name (default: %(default)s)")
    parser.add_argument("--num_images", type=int, default=10,
                        help="number of test images to send (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="request timeout in seconds (default: %(default)s)")
    args = parser.parse_args(argv)

    x_test, y_test = load_test_split()
    if not 1 <= args.num_images <= len(x_test):
        parser.error("--num_images must be between 1 and %d" % len(x_test))
    images = x_test[:args.num_images]
    labels = y_test[:args.num_images]

    server = args.server
    if "://" not in server:
        server = "http://" + server
    url = "%s/v1/models/%s:predict" % (server.rstrip("/"), args.model_name)
    print("POST %s (%d images)" % (url, len(images)))

    probs = predict(url, images, args.timeout)
    predicted = np.argmax(probs, axis=1)

    print()
    print("%5s  %9s  %5s  %10s" % ("image", "predicted", "label", "confidence"))
    for i, (p, t) in enumerate(zip(predicted, labels)):
        mark = "" if p == t else "  WRONG"
        print("%5d  %9d  %5d  %10.4f%s" % (i, p, t, probs[i, p], mark))
    correct = int(np.sum(predicted == labels))
    print()
    print("Accuracy: %d/%d = %.4f" % (correct, len(labels), correct / len(labels)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

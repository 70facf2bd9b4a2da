"""know: KNOW prediction (Knowledge-Overflowed Weights) in PyTorch.

Fine-tune a trained model on nested, shrinking subsets of its data (a forgetting trajectory), then run the
trajectory backwards with the KNOWN hyper-model to predict weights "as if trained on more data".
"""
__version__ = "0.1.0"


def predict(*args, **kwargs):
    """KNOW prediction over a trajectory; see :func:`know.predict.predict`."""
    from know.predict import predict as _predict
    return _predict(*args, **kwargs)

"""Look inside a model: tokens, next-token probabilities, attention, embeddings, weights.

Each function takes a loaded ``Model`` (``oficina.load``) and returns a dataclass with
``to_dict()``; ``plots`` draws the pictures::

    import oficina
    from oficina import inspect
    m = oficina.load("smollm2")
    inspect.tokenize(m, "computador").tokens
    inspect.predict(m, "The capital of France is", top=5, temperature=0.7).top
    inspect.plots.attention_png(inspect.attention(m, "O gato dorme no sofá", layer=5), "map.png")
"""

from . import plots
from .attention import Attention, attention, find_token
from .embed import POOLINGS, Embedding, Similarity, embed, similarity
from .predict import Candidate, Prediction, predict
from .tokens import Token, Tokenization, tokenize
from .weights import Histogram, Param, Weights, weights

__all__ = ["tokenize", "predict", "attention", "find_token", "embed", "similarity", "weights",
           "plots", "Token", "Tokenization", "Candidate", "Prediction", "Attention", "Embedding",
           "Similarity", "POOLINGS", "Weights", "Param", "Histogram"]

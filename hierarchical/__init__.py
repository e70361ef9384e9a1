"""hierarchical: a NumPyro model of LLM output-token counts pooled model -> family -> global.

Arrays in, arrays out (features, model index, family index, tokens); no dependency on bandit_sim or pandas.
"""

from .features import FEATURE_NAMES, Standardizer, query_features
from .fit import FitConfig, TokenPosterior, fit_nuts, fit_svi
from .io import PosteriorFileError, load_posterior, save_posterior
from .predictive import Prediction, predict
from .update import add_new_model

__all__ = [
    "FEATURE_NAMES", "query_features", "Standardizer",
    "FitConfig", "TokenPosterior", "fit_svi", "fit_nuts",
    "Prediction", "predict", "add_new_model",
    "save_posterior", "load_posterior", "PosteriorFileError",
]

"""The jet operator ``J^k f(x)(y)`` (:mod:`jetjax.jet.operator`) and the Taylor-mode interpreter behind it
(:mod:`jetjax.jet.taylor`)."""

from jetjax.jet.operator import FALLBACK_MAX_ORDER, MAX_ORDER, JetRuleError, jet

__all__ = ["jet", "JetRuleError", "MAX_ORDER", "FALLBACK_MAX_ORDER"]

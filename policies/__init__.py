"""Pure decision classes, one Protocol per decision, swapped by naming them in config (R7.4).

Each module holds one decision: ``fairness`` (allocation order), ``victim``
(deadlock victim), ``complexity`` and ``routing`` (model choice), ``alerts``
(threshold actions) and ``replan`` (break down / defer / simplify).
"""

from .alerts import AlertPolicy as AlertPolicy
from .alerts import DefaultAlertPolicy as DefaultAlertPolicy
from .complexity import ComplexityPolicy as ComplexityPolicy
from .complexity import ScoredComplexity as ScoredComplexity
from .fairness import AllocationPolicy as AllocationPolicy
from .fairness import Fifo as Fifo
from .fairness import PolicyHints as PolicyHints
from .fairness import PriorityWithFairness as PriorityWithFairness
from .replan import DefaultReplanPolicy as DefaultReplanPolicy
from .replan import ReplanPolicy as ReplanPolicy
from .routing import CheapestCapableRouting as CheapestCapableRouting
from .routing import RouteDecision as RouteDecision
from .routing import RoutingPolicy as RoutingPolicy
from .victim import LowestPriorityVictim as LowestPriorityVictim
from .victim import VictimPolicy as VictimPolicy

__all__ = [
    "AlertPolicy", "AllocationPolicy", "CheapestCapableRouting", "ComplexityPolicy",
    "DefaultAlertPolicy", "DefaultReplanPolicy", "Fifo", "LowestPriorityVictim",
    "PolicyHints", "PriorityWithFairness", "ReplanPolicy", "RouteDecision", "RoutingPolicy",
    "ScoredComplexity", "VictimPolicy",
]

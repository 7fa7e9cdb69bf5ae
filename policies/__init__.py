"""Pure decision classes, one Protocol per decision, swapped by naming them in config (R7.4).

Each module holds one decision: ``fairness`` (allocation order), ``victim``
(deadlock victim), ``complexity`` and ``routing`` (model choice), ``alerts``
(threshold actions) and ``replan`` (break down / defer / simplify).  Each
module also owns its policy's parameter model (``FairnessParams``,
``RoutingParams`` …); this package never imports ``scheduler``.
"""

from policies.alerts import AlertPolicy as AlertPolicy
from policies.alerts import AlertPolicyParams as AlertPolicyParams
from policies.alerts import DefaultAlertPolicy as DefaultAlertPolicy
from policies.complexity import ComplexityParams as ComplexityParams
from policies.complexity import ComplexityPolicy as ComplexityPolicy
from policies.complexity import ScoredComplexity as ScoredComplexity
from policies.fairness import AllocationPolicy as AllocationPolicy
from policies.fairness import FairnessParams as FairnessParams
from policies.fairness import Fifo as Fifo
from policies.fairness import PolicyHints as PolicyHints
from policies.fairness import PriorityWithFairness as PriorityWithFairness
from policies.replan import DefaultReplanPolicy as DefaultReplanPolicy
from policies.replan import ReplanParams as ReplanParams
from policies.replan import ReplanPolicy as ReplanPolicy
from policies.routing import CheapestCapableRouting as CheapestCapableRouting
from policies.routing import RouteDecision as RouteDecision
from policies.routing import RoutingParams as RoutingParams
from policies.routing import RoutingPolicy as RoutingPolicy
from policies.victim import LowestPriorityVictim as LowestPriorityVictim
from policies.victim import VictimPolicy as VictimPolicy

__all__ = [
    "AlertPolicy", "AlertPolicyParams", "AllocationPolicy", "CheapestCapableRouting",
    "ComplexityParams", "ComplexityPolicy", "DefaultAlertPolicy", "DefaultReplanPolicy",
    "FairnessParams", "Fifo", "LowestPriorityVictim", "PolicyHints", "PriorityWithFairness",
    "ReplanParams", "ReplanPolicy", "RouteDecision", "RoutingParams", "RoutingPolicy",
    "ScoredComplexity", "VictimPolicy",
]

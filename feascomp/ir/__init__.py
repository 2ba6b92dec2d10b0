"""The IR levels: tensor (front ends build it), feasibility (families and edges), plan
(feasibility plus colours and fused groups). Each prints to text and parses back."""
from .feasibility import BroadcastMap, Edge, Family, FeasModule, Group
from .tensor import Op, TensorModule
from .text import parse_ir, print_feasibility, print_tensor
from .types import TensorType

__all__ = [
    "BroadcastMap", "Edge", "Family", "FeasModule", "Group", "Op", "TensorModule", "TensorType",
    "parse_ir", "print_feasibility", "print_tensor",
]

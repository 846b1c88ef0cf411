"""Attack adapters (torchattacks, ART, AutoAttack) and the output checks all attacks pass."""
from .base import AttackInfo, CheckedAttack, attack_factory, build_attack, split_attack_list

__all__ = ["AttackInfo", "CheckedAttack", "attack_factory", "build_attack", "split_attack_list"]

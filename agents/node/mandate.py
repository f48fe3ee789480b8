"""What the machine's holders decided: its policy and region, whether it works, its payout policy.

The profile as loaded is the base; the holders' standing (read from the ledger, never from the
notice that prompts a reload) overrides its policy and region, parks or retires the machine, and
sets the share of profit it keeps. Every part of the node reads the current profile here.
"""

from __future__ import annotations

from typing import Literal

from hub import topics
from ledger import Charter
from ledger.proposals import Standing
from machines.profile import MachineProfile, Policy

__all__ = ["Mandate", "StandingStatus"]

StandingStatus = Literal["active", "parked", "retired"]


class Mandate:
    def __init__(self, profile: MachineProfile, charter: Charter | None = None) -> None:
        self.base = profile
        """The profile as loaded; ``profile`` is it with what the holders voted applied."""
        self.profile = profile
        self.standing: StandingStatus = "active"
        self.retain_bps: int | None = None
        """Payout policy: share of each job's profit (after its fixed costs) kept; None pays it all out."""
        self.charter = charter or Charter()

    def cfp_topics(self) -> list[str]:
        """Where the machine hears calls: its territory's, while it works or stands by parked (at
        the policy's standby premium; with none, a parked one hears no calls)."""
        if self.standing == "retired" or (self.standing == "parked" and self.profile.policy.standby_premium_bps is None):
            return []
        return [topics.cfp(region, self.base.kind.value) for region in self.profile.territory]

    def apply(self, standing: Standing, retain_bps: int | None, charter: Charter) -> None:
        """Bid from now on by what the holders decided: policy, region, territory, parked or not."""
        base = self.base
        region = standing.region or base.region
        changes = dict(standing.policy)
        if region != base.region and "territory" not in changes and set(base.territory) == {base.region}:
            changes["territory"] = [region]  # a workshop serves where it stands
        policy = Policy.model_validate({**base.policy.model_dump(), **changes})
        self.profile = base.model_copy(update={"region": region, "policy": policy})
        self.retain_bps = retain_bps
        self.standing = standing.status
        self.charter = charter

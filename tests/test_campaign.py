"""The short fault campaign (``tamc campaign``): a hundred jobs on separate processes while the
broker, machines, the requester and the ledger's PostgreSQL are SIGKILLed and restarted, and the
network to the broker is cut and restored, on a seeded schedule; the checker reads the whole
history and the ledger. And the checker itself: a planted double payment, a job
ended twice and two machines on one job each make it fail."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import broker_kind

from hub.cluster import find_nats
from ledger import Ledger, settlement
from market.history import Op, check, load
from tamc.campaign import REQUESTER, CampaignConfig, CampaignResult, run_campaign
from tamc.postgres import PrivatePostgres, postgres_binaries

pytestmark = [pytest.mark.skipif(broker_kind() != "mosquitto", reason="the campaign kills and restarts a mosquitto"),
              pytest.mark.skipif(postgres_binaries() is None, reason="the campaign restarts a PostgreSQL of its own: "
                                 "apt-get install postgresql")]

CONFIG = CampaignConfig(jobs=100, machines=4, seed=3, broker_kills=2, machine_kills=3, requester_kills=3, network_cuts=2,
                        ledger="postgres", postgres_restarts=2)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as pg:
        yield pg


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory, postgres: PrivatePostgres) -> CampaignResult:
    return run_campaign(CONFIG, tmp_path_factory.mktemp("campaign"), progress=print, postgres=postgres)


def test_the_short_campaign_ends_every_job_once_through_every_kind_of_fault(campaign: CampaignResult) -> None:
    v = campaign.verdict
    print(campaign.model_dump_json())
    assert v.ok, v.violations
    assert v.jobs == 100 and sum(v.endings.values()) == 100
    assert v.faults == {"kill broker": 2, "restart broker": 2, "kill machine": 3, "restart machine": 3, "kill requester": 3,
                        "restart requester": 3, "kill postgres": 2, "restart postgres": 2, "cut network": 2, "restore network": 2}
    # the market kept working through the faults (44 paid on a machine busy with another campaign, 92 idle)
    assert v.endings.get("paid", 0) >= 20, v.endings


def test_the_checker_fails_a_planted_double_payment_a_second_ending_and_two_holders(campaign: CampaignResult,
                                                                                   postgres: PrivatePostgres) -> None:
    history = load(Path(campaign.history))
    posted = sorted({op.job for op in history if op.kind == "ended" and op.job})
    ledger = Ledger(postgres.url)
    try:
        paid = next(op for op in history if op.kind == "ended" and op.what == "paid")
        assert paid.job and paid.machine
        assert check(history, ledger, posted).ok
        wallet = settlement.requester_account(REQUESTER)
        ledger.transfer(wallet, f"machine:{paid.machine}", int(paid.detail["price"]), key=f"release:{paid.job}:again",
                        memo=f"job {paid.job} done")  # the same job paid a second time
        twice = check(history, ledger, posted)
        assert not twice.ok and any(f"job {paid.job} paid 2 times" in v for v in twice.violations), twice.violations
        again = [*history, paid.model_copy(update={"t": history[-1].t + 1})]
        assert any(f"job {paid.job} ended 2 times" in v for v in check(again, ledger, posted).violations)
        other = next(m for m in ("camp-1", "camp-2", "camp-3", "camp-4") if m != paid.machine)
        started = next(op for op in history if op.kind == "event" and op.job == paid.job and op.what == "started")
        intruder = Op(t=started.t + 0.001, process=other, kind="event", job=paid.job, machine=other, what="progress")
        both = sorted([*history, intruder], key=lambda op: op.t)
        assert any(f"{other} said progress" in v for v in check(both, ledger, posted).violations)
    finally:
        ledger.close()


@pytest.mark.skipif(find_nats() is None, reason="the cluster campaign runs NATS server nodes: apt-get install nats-server")
def test_a_cluster_node_killed_mid_run_loses_no_job(tmp_path: Path) -> None:
    """Three NATS nodes (JetStream, MQTT 3.1.1), the machines and the requester spread over them and
    failing over to the others; two nodes are SIGKILLed and restarted while jobs run, one at a time,
    with a machine kill, a requester kill and a network cut besides. Every job ends once, none is
    paid twice or without a done, the ledger's audit is clean."""
    config = CampaignConfig(jobs=40, machines=4, seed=5, broker="nats-cluster", broker_kills=2, machine_kills=1,
                            requester_kills=1, network_cuts=1)
    result = run_campaign(config, tmp_path, progress=print)
    v = result.verdict
    print(result.model_dump_json())
    assert v.ok, v.violations
    assert v.jobs == 40 and sum(v.endings.values()) == 40
    assert v.faults["kill broker"] == 2 and v.faults["restart broker"] == 2, v.faults
    # the faults begin once the cluster has paid a job (how many more are paid depends on which node dies
    # when: a node that led the streams stalls the market for seconds; 0 to 34 of 40 seen before that rule)
    assert v.endings.get("paid", 0) >= 1, v.endings

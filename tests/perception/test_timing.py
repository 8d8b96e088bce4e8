from perception.timing import RateKeeper


def test_deadlines_are_anchored_to_the_first_tick_without_drift():
    keeper = RateKeeper(10)
    deadlines = [keeper.next_deadline(at_ns=t) for t in (0, 30_000_000, 150_000_000, 290_000_000)]
    assert deadlines == [0, 100_000_000, 200_000_000, 300_000_000]
    assert keeper.slips == 0


def test_a_stall_reanchors_instead_of_bursting():
    keeper = RateKeeper(10)
    keeper.next_deadline(at_ns=0)
    assert keeper.next_deadline(at_ns=1_000_000_000) == 1_000_000_000  # not 100 ms, 200 ms, ...
    assert keeper.slips == 1
    assert keeper.next_deadline(at_ns=1_010_000_000) == 1_100_000_000


def test_unpaced_keeper_never_waits():
    keeper = RateKeeper(None)
    assert keeper.next_deadline(at_ns=5) == 5

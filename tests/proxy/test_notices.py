"""Rate-bounded operator notices (authproxy.observe.notices), on a fake clock."""

from __future__ import annotations

from authproxy.observe.notices import RateLimitedNotices


def test_at_most_per_second_lines_a_second_and_the_rest_summed_up() -> None:
    now = [100.0]
    written: list[str] = []
    notices = RateLimitedNotices("test events", per_second=3, write=written.append, clock=lambda: now[0])
    for i in range(10):
        notices.notice(f"line {i}")
    assert written == ["line 0", "line 1", "line 2"]
    now[0] += 0.5
    notices.notice("line 10")  # same window
    notices.flush()  # the housekeeping tick
    assert written[3:] == ["authproxy: 8 more test events not shown (at most 3 lines a second)"]
    notices.flush()
    assert len(written) == 4  # nothing more to say
    now[0] += 0.6
    notices.notice("line 11")  # a new window
    assert written[4:] == ["line 11"]


def test_the_summary_can_go_elsewhere_than_the_lines() -> None:
    now = [100.0]
    lines: list[str] = []
    summaries: list[str] = []
    notices = RateLimitedNotices("log lines", per_second=2, write=lines.append, clock=lambda: now[0],
                                 summarise=summaries.append)
    for i in range(5):
        notices.notice(f"line {i}")
    notices.flush()
    assert lines == ["line 0", "line 1"]
    assert summaries == ["authproxy: 3 more log lines not shown (at most 2 lines a second)"]

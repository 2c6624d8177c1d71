"""A clock and sleeper for the manager's injected time: the clock moves only when someone
sleeps on it (or a test moves `now`), so retry intervals and grace periods pass at once."""


class FakeTime:
    def __init__(self, now: float = 0.0):
        self.now, self.slept = now, []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

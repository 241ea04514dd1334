"""The notebook progress bar ends as one line of text that names no time (the fit has one)."""

from __future__ import annotations

import IPython.display

from nfk_nb._progress import _NotebookBar


class Handle:
    def __init__(self):
        self.updates = []

    def update(self, data, raw=False):
        self.updates.append((data, raw))


def test_a_closed_bar_is_replaced_by_one_line(monkeypatch):
    handle, shown = Handle(), []
    monkeypatch.setattr(IPython.display, "display",
                        lambda obj, display_id=False: shown.append((obj, display_id)) or handle)
    bar = _NotebookBar(1200, "NFK fit")
    assert len(shown) == 1 and shown[0][1] is True  # the widget, under a display id
    bar.update(700)
    bar.update(500)
    bar.close()
    assert handle.updates == [({"text/plain": "NFK fit: done, 1,200/1,200 example passes"}, True)]

    handle.updates.clear()
    stopped = _NotebookBar(10, "NFK transform")
    stopped.update(4)
    stopped.close()
    assert handle.updates == [({"text/plain": "NFK transform: stopped, 4/10 example passes"}, True)]

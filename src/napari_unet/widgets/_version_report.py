"""What the Fine-tune dock says about a new version: whether it is put to use, and its held-out scores.

A version that did not beat the model it started from (its weights are the start's) or that scores lower
than it on the held-out part of the user's annotations is kept in the library but not selected; the message
says why and what helps. Pure text, so that the dock only shows it.
"""
from __future__ import annotations

from typing import Any


def version_message(version: Any, base: str, stopped_early: bool, corrections: str) -> tuple[str, bool]:
    """(message, selected): what to tell the user about ``version`` (fine-tuned from the model named ``base``)
    and whether it should be put to use. ``corrections``: the note on the weighed corrections, or ""."""
    early = "Stopped early; saved the best model so far" if stopped_early else "Saved"
    name = version.path.name
    advice = "Annotate more objects, or train longer."
    if version.improved is False:  # the version holds the start's weights: keep the start selected
        return (f"{early} as '{name}', but training did not beat {base} on the validation part of your "
                f"annotations, so {base} stays selected. {advice}{corrections}", False)
    if version.worse:
        return (f"{early} as '{name}', but it scores lower than {base} on the held-out part of your annotations, "
                f"so {base} stays selected. {advice}{corrections}", False)
    return (f"{early} as '{name}', fine-tuned from {base}. It is selected in the Segment widget: press 'Segment "
            f"again' to see it work, or 'Roll back' to return to {base}.{corrections}", True)


def scores_text(version: Any) -> str:
    """The held-out score of the parent and of the new version, as the dock shows them."""
    name = version.score_name
    if name is None:
        return ("No held-out score: too few annotated pixels to hold some out of training. Annotate more to see "
                "how the new version compares.")
    measure = "Object F1@0.5" if name == "val_f1" else "Foreground Dice"
    after = f"<b>{version.path.name} {version.after[name]:.3f}</b>"
    if name not in version.before:  # trained from random weights: the parent was not scored
        return f"{measure} on your held-out annotations:<br>{after}"
    change = version.after[name] - version.before[name]
    return (f"{measure} on your held-out annotations:<br>{version.parent.name} {version.before[name]:.3f} "
            f"&rarr; {after} ({change:+.3f})")

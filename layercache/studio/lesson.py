"""A guided lesson for a class: six steps, each a set of app inputs, two or three sentences and what to look at.
Plain data; the app turns each step into a button that sets the inputs and opens the tab it names.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Step:
    title: str
    text: str
    look: str
    settings: dict = field(default_factory=dict)   # input name -> value (the app's input names)
    tab: str = "compare"                          # "compare" or "explore"


_BASE = {"model": "tiny", "prompt": "seven", "seed": 0, "steps": 30, "guidance": 3.0, "groups": 4, "max_k": 4}

LESSON = (
    Step("1. Cached against uncached at 1.37×",
         "Both lanes start from the same noise. The cached lane runs 73% of the transformer's blocks and reuses the "
         "rest from earlier steps.",
         "Press Run. Watch the two images: they should look the same. The middle heatmap shows which groups ran "
         "(blue) and which were reused (orange) at each step.",
         {**_BASE, "method": "LayerCache", "budget": 0.73}),
    Step("2. Push the budget until it breaks",
         "A smaller budget reuses more. Each reused step extrapolates from older and older residuals, and the error "
         "adds up along the trajectory.",
         "Run at 0.5, then 0.35, then 0.25 (this step sets 0.35). Watch PSNR fall and the difference image light up: "
         "where does the cached digit first go wrong?",
         {**_BASE, "method": "LayerCache", "budget": 0.35}),
    Step("3. K = 1 against the JVP slope",
         "K = 1 reuses the last residual as it is. K ≥ 2 follows its slope (the first-order, “JVP” correction).",
         "Run this (K = 1 only), then pick “LayerCache” at the same budget and run again. Compare the two points in "
         "the run history and on the Pareto chart.",
         {**_BASE, "method": "LayerCache, K=1 (no JVP)", "budget": 0.5}),
    Step("4. Whole steps against per group",
         "LayerCache picks whole steps to compute first. “Per group” lets every group run on steps of its own, "
         "which pays only where groups behave differently.",
         "Run this, then “LayerCache” at the same budget. Compare the computed/reused maps and the PSNR of the two "
         "runs.",
         {**_BASE, "method": "LayerCache, per group", "budget": 0.5}),
    Step("5. Explore: which groups are stable?",
         "One uncached run, recorded group by group: how much each group's output changes per step, and how well "
         "a K-step slope predicts it.",
         "Press Explore. Read the sentence under the plots: is one group more stable than another? Early steps "
         "change most: that is why every plan computes them.",
         {**_BASE}, tab="explore"),
    Step("6. Paint a schedule that beats the planner",
         "The planner chooses from a model of the error. You can choose too.",
         "Run LayerCache, then open “Paint your own schedule”: click cells to compute or reuse them, keep the "
         "compute about the same, and press “Run this schedule”. Did you beat the planner's PSNR in the history?",
         {**_BASE, "method": "LayerCache", "budget": 0.5}),
)

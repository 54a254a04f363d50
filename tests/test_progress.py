"""progress: the bars pass every item through, in order, and count training steps."""

from ecoflap_exp.progress import track, training_progress


def test_track_yields_every_item_in_order_and_training_progress_advances(capsys):
    assert list(track(iter([3, 1, 2]), "items", total=3)) == [3, 1, 2]
    with training_progress("training", total=2) as step:
        step("loss 1.0")
        step("loss 0.5")
    out = capsys.readouterr().out
    assert "training" in out and "2/2" in out and "loss 0.5" in out

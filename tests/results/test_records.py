"""records: reading the store skips temporaries and names an unreadable record; what tells settings apart."""

import json

from ecoflap_exp.results.records import config_value, load_records, setting_leaves
from tests.results.test_tables import record_of


def test_tables_never_read_temporary_files_and_skip_an_unreadable_record(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "a.json").write_text(json.dumps(record_of("wanda", 0.5, 0, 90.0)))
    (runs / ".tmp-x1y2.json").write_text(json.dumps(record_of("wanda", 0.5, 1, 10.0)))  # a killed write's temporary
    (runs / "b.json").write_text("{")
    found, problems = load_records(runs)
    assert [r.id for r in found] == ["wanda0.50"]
    assert len(problems) == 1 and "b.json: unreadable record" in problems[0]


def test_a_setting_is_its_config_leaves_less_the_seed_the_point_and_what_changes_no_result():
    config = {"seed": 3, "sparsity": 0.5, "nm": None, "force": True, "paths": {"root": "/x"},
              "model": {"name": "llama_tiny", "seed": 1, "prune_towers": ["vision", "text"]},
              "scorer": {"eps": 1e-3, "num_samples": 32}}
    assert setting_leaves(config) == {"model.name": "llama_tiny", "model.prune_towers": "[vision,text]",
                                      "scorer.eps": "0.001", "scorer.num_samples": "32"}
    assert config_value(config, "scorer.eps") == 1e-3 and config_value(config, "scorer.eps.x") is None

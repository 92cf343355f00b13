"""Config files: every key converted to its TrainConfig field's type, the key named in every error."""

import pytest

from tdpo_mlx.config import TrainConfig, convert_value, load_config_file
from tdpo_mlx.errors import UserError


def _load(tmp_path, text, name="run.yaml"):
    f = tmp_path / name
    f.write_text(text)
    return load_config_file(f)


def test_yaml_values_take_their_field_types(tmp_path):
    d = _load(
        tmp_path,
        "lr: 1e-4\nbeta: '0.2'\nlora_rank: '16'\niters: 1e3\ndora: 'no'\ngrad-checkpoint: on\n"
        "quantize: 4\nlora_keys: q_proj, v_proj\nepochs: 2\nresume: yes\nref_model: null\n",
    )
    assert d == {
        "lr": 1e-4,
        "beta": 0.2,
        "lora_rank": 16,
        "iters": 1000,
        "dora": False,
        "grad_checkpoint": True,
        "quantize": 4,
        "lora_keys": ["q_proj", "v_proj"],
        "epochs": 2.0,
        "resume": "latest",
        "ref_model": None,
    }
    assert type(d["lr"]) is float and type(d["iters"]) is int and type(d["epochs"]) is float
    c = TrainConfig(**d).validate()
    assert c.dora is False and c.lr == 0.0001


@pytest.mark.parametrize(
    "text, culprit",
    [
        ("lora_rank: eight\n", "lora_rank: expected an integer, got 'eight'"),
        ("seed: abc\n", "seed: expected an integer"),
        ("batch_size: 2.5\n", "batch_size: expected an integer, got 2.5"),
        ("dora: maybe\n", "dora: expected true or false"),
        ("dora: 2\n", "dora: expected true or false"),
        ("lr: fast\n", "lr: expected a number"),
        ("lr: .nan\n", "lr: expected a finite number"),
        ("lora_rank: true\n", "lora_rank: expected an integer, got True"),
        ("loss: tdpo3\n", "loss: 'tdpo3' is not one of tdpo1, tdpo2, dpo, sft (did you mean tdpo2, tdpo1"),
        ("quantize: 3\n", "quantize: 3 is not one of 4, 8"),
        ("lora_keys: [1, 2]\n", "lora_keys: expected a list of names"),
        ("model: [a]\n", "model: expected a string"),
        ("beta: null\n", "beta: needs a value (float), got null"),
        ("lora_rnk: 4\n", "unknown option 'lora_rnk' (did you mean lora_rank"),
        ("- lr\n", "must be a mapping of option: value, got list"),
        ("lr: [1\n", "run.yaml:2: not valid YAML"),
    ],
)
def test_bad_yaml_values_name_file_and_key(tmp_path, text, culprit):
    with pytest.raises(UserError) as e:
        _load(tmp_path, text)
    assert culprit in str(e.value) and "run.yaml" in str(e.value)


def test_json_config_and_bytes(tmp_path):
    assert _load(tmp_path, '{"lr": "5e-5", "dora": false}', "c.json") == {"lr": 5e-5, "dora": False}
    with pytest.raises(UserError, match=r"c.json:1: not valid JSON"):
        _load(tmp_path, '{"lr": }', "c.json")
    (tmp_path / "b.yaml").write_bytes(b"lr: 1e-4\nmodel: \xff\n")
    with pytest.raises(UserError, match=r"b.yaml:2: not UTF-8"):
        load_config_file(tmp_path / "b.yaml")
    with pytest.raises(FileNotFoundError, match=r"--config: config file not found: .*rn.yaml \(did you mean"):
        load_config_file(tmp_path / "rn.yaml")  # near miss of run.yaml
    (tmp_path / "run.yaml").write_text("")


def test_python_api_is_checked_too():
    assert TrainConfig(lr="1e-4", dora="no", lora_rank="8").validate().lr == 1e-4
    with pytest.raises(UserError, match="--lora-rank: expected an integer"):
        TrainConfig(lora_rank="eight").validate()
    assert convert_value("resume", False) is None

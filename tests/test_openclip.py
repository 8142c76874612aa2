"""open_clip imported without transformers where the architecture does not need it (atlas.openclip)."""

import subprocess
import sys

from atlas.openclip import needs_transformers, open_clip_config


def test_configs_read_without_importing_open_clip():
    assert open_clip_config("RN50x4")["vision_cfg"]["image_size"] == 288
    assert open_clip_config("no-such-arch") is None
    assert needs_transformers("roberta-ViT-B-32") and not needs_transformers("ViT-L-14")
    assert not needs_transformers("no-such-arch")


def test_building_a_model_leaves_transformers_unimported_until_an_arch_needs_it():
    code = """
import sys
from atlas.models import load_model
m = load_model('open_clip:RN50@random:0')
assert m.image_size == 224
print('after RN50:', 'transformers' in sys.modules, sys.modules['open_clip.hf_model'].transformers)
from atlas.openclip import import_open_clip
oc = import_open_clip(transformers=True)
import transformers
hf = sys.modules['open_clip.hf_model']
print('after hf:', hf.transformers is transformers, oc.model.HFTextEncoder.__init__.__globals__['AutoConfig']
      is transformers.AutoConfig)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "after RN50: False None" in out.stdout, out.stdout
    assert "after hf: True True" in out.stdout, out.stdout

import subprocess
import sys


def test_import_medqwen_without_its_extra_names_the_install_command():
    code = ("import importlib.util as u; find = u.find_spec; "
            "u.find_spec = lambda name, *a: None if name in ('gguf', 'transformers') else find(name, *a); "
            "import medqwen")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "missing: transformers, gguf): pip install '.[medqwen]'" in result.stderr

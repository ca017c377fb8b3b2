import os

import lit.formats

config.name = "lowbit"
config.test_format = lit.formats.ShTest()
config.suffixes = [".lbir"]
config.test_source_root = os.path.dirname(__file__)
config.environment["PATH"] = os.environ.get("PATH", "")

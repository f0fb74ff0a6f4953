"""The suite's tasks: one small file each, built on dyt.train's Task contract."""

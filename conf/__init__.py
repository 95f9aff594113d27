# Makes conf/ the package speedtrain.conf in the wheel (see pyproject.toml), so `pkg://speedtrain.conf` works.

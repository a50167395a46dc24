"""The cache schemes the Python tests use: CalibQuant's 1-bit pair with calibration (channel keys
and values) and KIVI's 2-bit pair (channel keys in groups of 32, token-axis values)."""

CALIBQUANT = (
    "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), "
    "value(bits = 1, axis = channel, group = all, rule = shrink(0.3)), calibrate = 3"
)
KIVI = (
    "key(bits = 2, axis = channel, group = 32, rule = minmax), "
    "value(bits = 2, axis = token, group = 32, rule = minmax)"
)

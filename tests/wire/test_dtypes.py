"""The one dtype table: DT_* names as numpy and as TF's DataTypeString."""

from pipeline.wire.dtypes import DTYPES, data_type_string, numpy_name


def test_names_both_ways():
    assert numpy_name("DT_FLOAT") == "float32" and data_type_string("DT_FLOAT") == "float"
    assert numpy_name("DT_STRING") == "string" and data_type_string("DT_DOUBLE") == "double"
    assert numpy_name("float32") == "float32"  # already numpy's: unchanged
    assert data_type_string("DT_VARIANT") == "variant"  # outside the table: TF's lower-case rule


def test_every_numpy_name_is_a_real_numpy_dtype_or_a_tf_only_one():
    import numpy as np

    for tf_name, (numpy, _) in DTYPES.items():
        if numpy not in ("string", "bfloat16"):
            assert np.dtype(numpy).name == numpy, tf_name

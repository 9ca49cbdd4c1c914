"""Field providers: a face of `prefopt.training.fields`, where they are defined."""

from prefopt.training.fields import (  # noqa: F401
    ColumnField,
    EmptyTraceField,
    FieldContext,
    FieldProvider,
    ModelField,
    ReferenceField,
    SampleField,
    Unavailable,
    servable_fields,
)

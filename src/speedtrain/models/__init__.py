"""Model builders: the student families (``student``: BERT sizes, ``static``: hashed n-gram bag) and the teacher.

Importing the package registers the ``static`` family with ``transformers``' Auto classes, so
``AutoModelForSequenceClassification.from_pretrained`` loads a saved static student.
"""

from speedtrain.models import static  # noqa: F401  (registers StaticConfig with the Auto classes)

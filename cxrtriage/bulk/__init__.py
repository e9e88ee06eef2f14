"""Bulk triage of whole archives: one Parquet row per image, resumable, on Ray Data or locally.

Sources
-------
* a folder: every image file below it (DICOM, JPEG, PNG, ... and files without a suffix,
  as DICOM archives often store them);
* a CSV of paths: the ``path`` column (else the first column); relative paths are taken
  from the CSV's folder;
* a DICOMweb server (``http://`` or ``https://``, or a :class:`DicomwebArchive` holding a
  :class:`~cxrtriage.pacs.connection.PacsConnection`): the CR and DX instances QIDO-RS lists,
  fetched by the workers with WADO-RS.

Engines
-------
``ray``: Ray Data; a pool of actors, each holding one :class:`~cxrtriage.infer.Engine`
(``map_batches`` with a callable class), on a local Ray or an existing cluster (``address``).
A named model's files travel with the actors, so cluster nodes need the package but not the
model. With no model named, each actor holds the :class:`~cxrtriage.infer.Router` over the
bundled models (installed with the package) and every row says which model judged the film
and why (``model_name``, ``routed_by``: age or gate), with a ``p_<class>`` column for every
class of every routed model (empty where another model judged).
``local``: the same per-batch work in this process (no Ray), e.g. as a baseline.

Results
-------
``out`` (e.g. ``results.parquet``) is a Parquet dataset: a folder of part files, each written
whole under a temporary name and renamed, so a stopped job leaves only complete parts. Read it
with ``pandas.read_parquet(out)``, ``pyarrow.parquet.read_table(out)``, DuckDB
(``out/*.parquet``), Spark or ``ray.data.read_parquet``. A rerun skips every path that already
has a row (resume); a bad file is a row with ``error`` set, never a failed job.

Modules: :mod:`~cxrtriage.bulk.sources` (what to read), :mod:`~cxrtriage.bulk.scorer` (the
per-batch work, one engine each), :mod:`~cxrtriage.bulk.results` (rows and the Parquet folder),
:mod:`~cxrtriage.bulk.runner` (:func:`bulk_triage`: Ray Data or local).

Ray and pyarrow are the ``ray`` extra; importing this package needs neither.
"""

from cxrtriage.bulk.results import BASE_COLUMNS, ResultStore, class_column, prediction_row, result_schema
from cxrtriage.bulk.runner import BulkSummary, bulk_triage
from cxrtriage.bulk.scorer import BulkScorer, model_files
from cxrtriage.bulk.sources import BulkError, DicomwebArchive, is_dicomweb, list_source

__all__ = ["BASE_COLUMNS", "BulkError", "BulkSummary", "DicomwebArchive", "ResultStore", "BulkScorer", "bulk_triage",
           "class_column", "is_dicomweb", "list_source", "model_files", "prediction_row", "result_schema"]

"""The COVID-19 films of three collections, with their source and site (cxrtriage.data.covid_sources)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from covid_fixtures import make_covid_folders

from cxrtriage.data.covid_sources import (
    HANNOVER_SITE,
    NIH_SITE,
    covid3_films,
    describe,
    multisource_films,
    nih_label,
    write_covid3_manifest,
)
from cxrtriage.data.samples import read_manifest

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    return make_covid_folders(tmp_path_factory.mktemp("covid-data"))


def test_labels_sources_and_sites(folders):
    films = covid3_films(folders)
    assert Counter(f.source for f in films) == {"ieee8023": 6, "covid-cxnet": 3, "figure1": 2, "hannover": 3, "nih": 4}
    assert Counter(f.label for f in films) == {"covid19": 10, "other_pneumonia": 4, "normal": 4}
    nih = [f for f in films if f.source == "nih"]
    # No Finding -> normal, any Pneumonia -> other pneumonia; Effusion, Consolidation alone and the child are out
    assert sorted(f.label for f in nih) == ["normal", "normal", "other_pneumonia", "other_pneumonia"]
    assert {f.site for f in nih} == {NIH_SITE}
    assert {f.site for f in films if f.source == "hannover"} == {HANNOVER_SITE}
    assert [f.site for f in films if f.source == "figure1"] == ["unknown", "unknown"]
    assert all(Path(f.path).is_file() for f in films)


def test_hannover_patients_of_the_multisource_folder_are_the_hannover_folders(folders):
    films = covid3_films(folders)
    abc = [f for f in films if f.patient_id == "mhh-abc"]
    assert Counter(f.source for f in abc) == {"hannover": 2, "covid-cxnet": 1}
    assert not any(f.patient_id.startswith("hannover-") for f in films)


def test_sources_can_be_chosen_and_unknown_ones_refused(folders):
    assert {f.source for f in covid3_films(folders, ("nih", "figure1"))} == {"nih", "figure1"}
    with pytest.raises(ValueError, match="unknown source"):
        covid3_films(folders, ("nih", "chexpert"))


def test_nih_label():
    assert nih_label("No Finding") == "normal"
    assert nih_label("Effusion|Pneumonia") == "other_pneumonia"
    assert nih_label("Consolidation") is None
    assert nih_label("No Finding|Effusion") is None


def test_bad_folders_give_clear_errors(tmp_path, folders):
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        multisource_films(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "labels.csv").write_text("path,label,patient_id\nimages/a.png,COVID-19,p1\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['source', 'site'\]"):
        multisource_films(bad)
    rows = list(csv.reader((folders / "covid-multisource" / "labels.csv").open()))
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "images").symlink_to(folders / "covid-multisource" / "images")
    rows[1][1] = "tuberculosis"
    with (odd / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(ValueError, match="unknown label 'tuberculosis'"):
        multisource_films(odd)
    rows[1][1], rows[1][0] = "COVID-19", "images/missing.png"
    with (odd / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        multisource_films(odd)


def test_manifest_round_trip(folders, tmp_path):
    films = covid3_films(folders)
    samples = read_manifest(write_covid3_manifest(films, tmp_path / "m.csv"))
    assert [(s.path, s.label, s.patient_id) for s in samples] == [(f.path, f.label, f.patient_id) for f in films]
    assert describe(films) == "covid19 10/7, other_pneumonia 4/3, normal 4/4"


@pytest.mark.skipif(not (SHARED_DATA / "covid-multisource").is_dir(),
                    reason="needs ../shared/data/covid-multisource, covid-hannover and nih-cxr14")
def test_shared_folders_hold_what_their_readmes_say():
    films = covid3_films(SHARED_DATA.resolve())
    multi = [f for f in films if f.source in ("ieee8023", "covid-cxnet", "figure1")]
    assert Counter(f.label for f in multi) == {"covid19": 690, "other_pneumonia": 44, "normal": 11}
    assert sum(f.source == "hannover" for f in films) == 243
    # one patient id per patient across folders: the Hannover patients the two folders share
    assert len({f.patient_id for f in films if f.source == "hannover"}
               & {f.patient_id for f in multi}) == 2

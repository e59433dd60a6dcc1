"""MovieLens loaders: the real 100K copy in ../shared/data, and a generated file in the 1M format."""

import pytest

import dcn_explore as dx
from dcn_explore import DataError
from dcn_explore.data.movielens import load_frame


def test_100k_under_the_papers_protocol(shared_data):
    ds = dx.data.movielens("100k", root=shared_data, download=False)
    raw = load_frame("100k", root=shared_data, download=False)
    assert len(raw) == 100_000 and raw.rating.sum() == 352_986
    assert raw.user_id.nunique() == 943 and raw.movie_id.nunique() == 1682
    kept = raw[raw.rating != 3]
    assert len(ds) == len(kept)
    assert float(ds.label.mean()) == pytest.approx(float((kept.rating >= 4).mean()))
    assert ds.schema.names == ["user_id", "movie_id", "gender", "age", "occupation", "zip_code"]
    assert ds.schema["user_id"].vocab_size == 943 + 1 and ds.schema["gender"].vocab_size == 3
    assert ds.schema["age"].vocab_size == 7 + 1  # bucketed into MovieLens-1M's 7 age groups


def test_100k_with_multivalent_genres(shared_data):
    ds = dx.data.movielens("100k", root=shared_data, download=False, genres=True)
    assert ds.schema["genres"].kind == "multivalent"
    assert int((ds.multivalent[:, 0] > 0).sum(1).max()) >= 4  # some movies have several genres


def _write_1m(folder, ratings_lines=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n")
    (folder / "movies.dat").write_bytes("1::Toy Story (1995)::Animation|Children's|Comedy\n2::Jumanji (1995)::Adventure|Children's|Fantasy\n3::Amélie (2001)::Comedy|Romance\n".encode("latin-1"))
    lines = ratings_lines or ["1::1::5::978300760", "1::2::3::978302109", "2::1::1::978301968", "2::3::4::978300275", "3::2::2::978824291", "3::3::5::978302268"]
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")


def test_1m_format_loader_on_a_generated_file(tmp_path):
    _write_1m(tmp_path / "ml-1m")
    ds = dx.data.movielens("1m", root=tmp_path, download=False, genres=True)
    assert len(ds) == 5  # the rating 3 is dropped
    assert ds.label.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert ds.schema.names == ["user_id", "movie_id", "gender", "age", "occupation", "zip_code", "genres"]
    raw = load_frame("1m", root=tmp_path, download=False)
    assert raw.loc[raw.movie_id == 3, "genres"].iloc[0] == "Comedy|Romance"


def test_1m_malformed_lines_name_file_and_line(tmp_path):
    _write_1m(tmp_path / "ml-1m", ["1::1::5::978300760", "1::2::978302109"])
    with pytest.raises(DataError, match=r"ratings.dat, line 2: expected 4 fields"):
        dx.data.movielens("1m", root=tmp_path, download=False)
    _write_1m(tmp_path / "ml-1m", ["1::1::5::978300760", "1::x::4::978302109"])
    with pytest.raises(DataError, match=r"ratings.dat, line 2: field 'movie_id' = 'x' is not an integer"):
        dx.data.movielens("1m", root=tmp_path, download=False)
    _write_1m(tmp_path / "ml-1m", ["1::1::9::978300760"])
    with pytest.raises(DataError, match="rating 9 is outside 1..5"):
        dx.data.movielens("1m", root=tmp_path, download=False)


def test_missing_data_without_download_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match="not found .*download=False"):
        dx.data.movielens("1m", root=tmp_path, download=False)


def test_a_modified_100k_copy_fails_its_checksum(tmp_path, shared_data):
    import shutil

    shutil.copytree(shared_data / "ml-100k", tmp_path / "ml-100k")
    p = tmp_path / "ml-100k" / "u.data"
    p.chmod(0o644)
    p.write_text(p.read_text().replace("\t5\t", "\t4\t", 1))
    with pytest.raises(DataError, match="MD5 .* differs"):
        dx.data.movielens("100k", root=tmp_path, download=False)

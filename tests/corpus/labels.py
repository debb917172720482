"""Darknet label files with every kind of malformed line, and malformed COCO JSON, VOC XML, Open Images CSV.

A `LabelCase` is one label file's bytes with what the validator must find: `rows` valid boxes and whether
the file has an error (then `darktune data check` skips its image). `hostile` names cases a fuzzer would not
easily find. An `AnnotationCase` is a small set of files in one format with the reader's expected outcome:
"ok" (read), "reject" (DarktuneError naming the file), "skip" (read with skip_bad=True: the bad record
skipped and counted; without it, a DarktuneError), or "clip" (a box past the image edge: read clipped, or dropped
as mostly outside, and counted in the summary, as darknet and ultralytics clip).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

GOOD = "0 0.5 0.5 0.25 0.4"


@dataclass(frozen=True)
class LabelCase:
    name: str
    data: bytes
    rows: int  # valid boxes the validator returns
    error: bool  # at least one error-severity problem (the image is skipped by check and training)
    n_classes: int = 2
    note: str = ""
    import_clips: bool = False  # data import clips the box past the edge (counted) where check refuses it

    @property
    def import_error(self) -> bool:
        """Whether `data import` refuses the file (or, with --skip-bad, skips its image)."""
        return self.error and not self.import_clips


def _case(name: str, text: str | bytes, rows: int, error: bool, **kw) -> LabelCase:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return LabelCase(name, data, rows, error, **kw)


def label_cases() -> list[LabelCase]:
    """Each malformed-line kind once or more, plus the odd-but-valid files that must be read as they are."""
    big = "9" * 5000
    cases = [
        # valid, odd but fine
        _case("empty", "", 0, False, note="no objects: a negative image"),
        _case("blank_lines", "\n\n   \n\t\n", 0, False),
        _case("one_box", GOOD + "\n", 1, False),
        _case("no_final_newline", GOOD, 1, False),
        _case("crlf", f"{GOOD}\r\n1 0.2 0.2 0.1 0.1\r\n", 2, False),
        _case("tabs", GOOD.replace(" ", "\t") + "\n", 1, False),
        _case("leading_spaces", "   " + GOOD + "   \n", 1, False),
        _case("bom", "\ufeff" + GOOD + "\n", 1, False, note="BOM ignored, with a warning"),
        _case("duplicate_line", f"{GOOD}\n{GOOD}\n", 1, False, note="duplicate dropped, with a warning"),
        _case("exponent", "0 5e-1 5E-1 2.5e-1 4e-1\n", 1, False),
        _case("plus_signs", "+0 +0.5 +0.5 +0.25 +0.4\n", 1, False),
        _case("leading_dot", "0 .5 .5 .25 .4\n", 1, False),
        _case("whole_image", "0 0.5 0.5 1 1\n", 1, False),
        _case("edge_box", "1 0.05 0.95 0.1 0.1\n", 1, False),
        # columns
        _case("four_columns", "0 0.5 0.5 0.25\n", 0, True),
        _case("six_columns", GOOD + " 0.9\n", 0, True, note="e.g. a confidence column"),
        _case("one_column", "0\n", 0, True),
        _case("comment_after", GOOD + " # window\n", 0, True),
        _case("mixed_good_bad", f"{GOOD}\n0 0.5 0.5\n1 0.2 0.2 0.1 0.1\n", 2, True),
        # non-numbers
        _case("class_word", "window 0.5 0.5 0.25 0.4\n", 0, True),
        _case("coord_word", "0 0.5 half 0.25 0.4\n", 0, True),
        _case("hex_float", "0 0x1p-1 0.5 0.25 0.4\n", 0, True),
        _case("unicode_digits", "0 \u0660.\u0665 0.5 0.25 0.4\n", 0, True, note="Arabic-Indic digits"),
        _case("fullwidth_digits", "\uff10 0.5 0.5 0.25 0.4\n", 0, True),
        _case("nul_byte", "0 0.5\x00 0.5 0.25 0.4\n", 0, True),
        _case("latin1_bytes", b"0 0.5 0.5 0.25 0.4 \xe9\n", 0, True, note="not UTF-8"),
        _case("utf16", GOOD.encode("utf-16"), 0, True),
        _case("binary_garbage", bytes(range(256)) * 4, 0, True),
        # NaN / inf
        _case("nan", "0 nan 0.5 0.25 0.4\n", 0, True),
        _case("NaN_size", "0 0.5 0.5 NaN 0.4\n", 0, True),
        _case("inf", "0 0.5 inf 0.25 0.4\n", 0, True),
        _case("minus_inf", "0 0.5 0.5 0.25 -inf\n", 0, True),
        _case("overflow_to_inf", "0 0.5 0.5 1e999 0.4\n", 0, True),
        # out of range
        _case("cx_above_1", "0 1.5 0.5 0.25 0.4\n", 0, True),
        _case("cy_negative", "0 0.5 -0.1 0.25 0.4\n", 0, True),
        _case("zero_width", "0 0.5 0.5 0 0.4\n", 0, True),
        _case("negative_height", "0 0.5 0.5 0.25 -0.4\n", 0, True),
        _case("width_above_1", "0 0.5 0.5 1.2 0.4\n", 0, True),
        _case("box_leaves_image", "0 0.9 0.5 0.5 0.4\n", 0, True, import_clips=True,
              note="centre inside, box past the edge: data check refuses it, data import clips it (counted)"),
        _case("tiny_box", "0 0.5 0.5 1e-9 1e-9\n", 0, True),
        _case("pixel_coordinates", "0 320 240 64 48\n", 0, True, note="pixels instead of fractions"),
        _case("pixel_corners", "0 12 40 300 220\n", 0, True),
        # class ids
        _case("class_too_large", "2 0.5 0.5 0.25 0.4\n", 0, True, note="2 classes: ids 0..1"),
        _case("class_far_too_large", "99999999999999999999 0.5 0.5 0.25 0.4\n", 0, True),
        _case("class_negative", "-1 0.5 0.5 0.25 0.4\n", 0, True),
        _case("class_fractional", "0.5 0.5 0.5 0.25 0.4\n", 0, True),
        _case("class_float_form", "1.0 0.5 0.5 0.25 0.4\n", 0, True, note="darknet reads %d: refused"),
        _case("class_exponent", "1e0 0.5 0.5 0.25 0.4\n", 0, True),
        _case("class_5000_digits", f"{big} 0.5 0.5 0.25 0.4\n", 0, True,
              note="past Python's int() digit limit"),
        # separators
        _case("commas", "0,0.5,0.5,0.25,0.4\n", 0, True),
        _case("decimal_commas", "0 0,5 0,5 0,25 0,4\n", 0, True),
        _case("semicolons", "0;0.5;0.5;0.25;0.4\n", 0, True),
        _case("json_line", '{"class": 0, "box": [0.5, 0.5, 0.25, 0.4]}\n', 0, True),
        # size
        _case("very_long_line", "0 " + "5" * 200_000 + " 0.5 0.25 0.4\n", 0, True),
    ]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "duplicate label case names"
    return cases


@dataclass(frozen=True)
class AnnotationCase:
    fmt: str  # "coco" | "voc" | "openimages"
    name: str
    files: dict = field(default_factory=dict)  # relative path -> bytes (images are added by the test)
    expect: str = "reject"  # "ok" | "reject" | "skip" | "clip"
    note: str = ""


# ------------------------------------------------------------------------------------------------ COCO


def _coco_doc(**over) -> dict:
    doc = {"images": [{"id": 1, "file_name": "img.jpg", "width": 64, "height": 40}],
           "categories": [{"id": 1, "name": "window"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 4, 20, 16]}]}
    doc.update(over)
    return doc


def _ann(**over) -> list:
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 4, 20, 16]}
    ann.update(over)
    return [ann]


def _img(**over) -> list:
    img = {"id": 1, "file_name": "img.jpg", "width": 64, "height": 40}
    img.update(over)
    return [img]


def coco_cases() -> list[AnnotationCase]:
    def j(doc) -> dict:
        return {"ann.json": json.dumps(doc).encode()}

    def raw(text: str | bytes) -> dict:
        return {"ann.json": text.encode() if isinstance(text, str) else text}

    rows = [
        ("valid", j(_coco_doc()), "ok"),
        ("valid_bom", raw("\ufeff" + json.dumps(_coco_doc())), "ok"),
        ("empty_file", raw(""), "reject"),
        ("not_json", raw("images: []"), "reject"),
        ("truncated_json", raw(json.dumps(_coco_doc())[:60]), "reject"),
        ("json_array", j([_coco_doc()]), "reject"),
        ("missing_images", j({k: v for k, v in _coco_doc().items() if k != "images"}), "reject"),
        ("images_not_list", j(_coco_doc(images={"id": 1})), "reject"),
        ("image_without_id", j(_coco_doc(images=[{"file_name": "img.jpg", "width": 64, "height": 40}])), "reject"),
        ("image_id_string", j(_coco_doc(images=_img(id="1"))), "reject"),
        ("image_id_fractional", j(_coco_doc(images=_img(id=1.5))), "reject"),
        ("image_id_nan", raw(json.dumps(_coco_doc(images=_img(id=0))).replace('"id": 0', '"id": NaN')), "reject"),
        ("image_id_infinity", raw(json.dumps(_coco_doc(images=_img(id=0))).replace('"id": 0', '"id": 1e999')),
         "reject"),
        ("width_zero", j(_coco_doc(images=_img(width=0))), "reject"),
        ("width_string", j(_coco_doc(images=_img(width="64px"))), "reject"),
        ("duplicate_image_id", j(_coco_doc(images=_img() + _img())), "reject"),
        ("category_without_name", j(_coco_doc(categories=[{"id": 1}])), "reject"),
        ("category_name_newline", j(_coco_doc(categories=[{"id": 1, "name": "win\ndow"}])), "reject"),
        ("duplicate_category", j(_coco_doc(categories=[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])), "reject"),
        ("unknown_image_id", j(_coco_doc(annotations=_ann(image_id=7))), "skip"),
        ("unknown_category_id", j(_coco_doc(annotations=_ann(category_id=9))), "skip"),
        ("bbox_three_numbers", j(_coco_doc(annotations=_ann(bbox=[1, 2, 3]))), "skip"),
        ("bbox_strings", j(_coco_doc(annotations=_ann(bbox=["8", "4", "20", "16"]))), "skip"),
        ("bbox_null", j(_coco_doc(annotations=_ann(bbox=None))), "skip"),
        ("bbox_nan", raw(json.dumps(_coco_doc()).replace("[8, 4, 20, 16]", "[8, NaN, 20, 16]")), "skip"),
        ("bbox_negative_size", j(_coco_doc(annotations=_ann(bbox=[8, 4, -20, 16]))), "skip"),
        ("bbox_outside_image", j(_coco_doc(annotations=_ann(bbox=[70, 4, 20, 16]))), "skip"),
        ("bbox_past_edge", j(_coco_doc(annotations=_ann(bbox=[50, 4, 20, 16]))), "clip"),
        ("bbox_mostly_past_edge", j(_coco_doc(annotations=_ann(bbox=[60, 4, 200, 16]))), "clip"),
        ("annotation_not_object", j(_coco_doc(annotations=[42])), "skip"),
        ("deep_nesting", raw('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}"), "reject"),
        ("utf16", raw(json.dumps(_coco_doc()).encode("utf-16")), "reject"),
    ]
    return [AnnotationCase("coco", name, files, expect) for name, files, expect in rows]


# ------------------------------------------------------------------------------------------------- VOC

_VOC_OBJECT = ("<object><name>window</name><bndbox><xmin>{0}</xmin><ymin>{1}</ymin><xmax>{2}</xmax>"
               "<ymax>{3}</ymax></bndbox></object>")


def _voc(objects: str = _VOC_OBJECT.format(8, 4, 28, 20), size: str = "<size><width>64</width><height>40</height>"
         "<depth>3</depth></size>", head: str = "", root: str = "annotation") -> bytes:
    return (f'<?xml version="1.0"?>{head}<{root}><filename>img.jpg</filename>{size}{objects}</{root}>').encode()


_LAUGHS = ('<!DOCTYPE lolz [<!ENTITY lol "lol">' + "".join(
    f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10)) + "]>")


def voc_cases() -> list[AnnotationCase]:
    def x(data: bytes) -> dict:
        return {"ann.xml": data}

    rows = [
        ("valid", x(_voc()), "ok"),
        ("size_zero_read_from_image", x(_voc(size="<size><width>0</width><height>0</height></size>")), "ok"),
        ("not_xml", x(b"window 8 4 28 20\n"), "reject"),
        ("truncated_xml", x(_voc()[:70]), "reject"),
        ("empty_file", x(b""), "reject"),
        ("wrong_root", x(_voc(root="annotations")), "skip"),
        ("no_bndbox", x(_voc(objects="<object><name>window</name></object>")), "skip"),
        ("no_name", x(_voc(objects=_VOC_OBJECT.format(8, 4, 28, 20).replace("<name>window</name>", ""))), "skip"),
        ("xmin_word", x(_voc(objects=_VOC_OBJECT.format("left", 4, 28, 20))), "skip"),
        ("xmin_nan", x(_voc(objects=_VOC_OBJECT.format("nan", 4, 28, 20))), "skip"),
        ("xmax_before_xmin", x(_voc(objects=_VOC_OBJECT.format(28, 4, 8, 20))), "skip"),
        ("box_outside_image", x(_voc(objects=_VOC_OBJECT.format(70, 4, 90, 20))), "skip"),
        ("box_past_edge", x(_voc(objects=_VOC_OBJECT.format(50, 4, 70, 20))), "clip"),
        ("box_mostly_past_edge", x(_voc(objects=_VOC_OBJECT.format(8, 4, 300, 20))), "clip"),
        ("billion_laughs", x(_voc(objects="<object><name>&lol9;</name></object>", head=_LAUGHS)), "reject"),
        ("quadratic_blowup", x(_voc(objects="<object><name>" + "&a;" * 10_000 + "</name></object>",
                                    head='<!DOCTYPE a [<!ENTITY a "' + "x" * 10_000 + '">]>')), "reject"),
        ("external_entity", x(_voc(objects="<object><name>&ext;</name></object>",
                                   head='<!DOCTYPE a [<!ENTITY ext SYSTEM "file:///etc/passwd">]>')), "reject"),
        ("external_dtd_not_fetched", x(_voc(head='<!DOCTYPE annotation SYSTEM "http://127.0.0.1:9/evil.dtd">')),
         "ok"),
        ("parameter_entity", x(_voc(head='<!DOCTYPE a [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>')),
         "reject"),
        ("bad_encoding_declaration", x(_voc().replace(b'version="1.0"', b'version="1.0" encoding="klingon"')),
         "reject"),
        ("deep_nesting", x(_voc(objects=_VOC_OBJECT.format(8, 4, 28, 20) + "<a>" * 20_000 + "</a>" * 20_000)),
         "ok"),
    ]
    return [AnnotationCase("voc", name, files, expect) for name, files, expect in rows]


# --------------------------------------------------------------------------------------------- Open Images

_OI_HEADER = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,"
              "IsDepiction,IsInside")
_OI_ROW = "img,xclick,/m/0d4v4,1,0.1,0.4,0.2,0.6,0,0,0,0,0"
_OI_DESC = b"/m/0d4v4,Window\n/m/0k4j,Car\n"


def openimages_cases() -> list[AnnotationCase]:
    def oi(rows: list[str] | str, header: str = _OI_HEADER, desc: bytes = _OI_DESC) -> dict:
        body = rows if isinstance(rows, str) else "\n".join([header, *rows]) + "\n"
        return {"boxes.csv": body.encode() if isinstance(body, str) else body, "desc.csv": desc}

    rows = [
        ("valid", oi([_OI_ROW]), "ok"),
        ("unknown_image_id", oi([_OI_ROW, _OI_ROW.replace("img,", "notdownloaded,", 1)]), "ok",
         "counted as skipped: image not in the folder"),
        ("empty_file", oi(""), "reject"),
        ("missing_columns", oi([_OI_ROW.rsplit(",", 2)[0]], header=_OI_HEADER.rsplit(",", 2)[0]), "reject"),
        ("short_row", oi([",".join(_OI_ROW.split(",")[:6])]), "skip"),
        ("xmin_word", oi([_OI_ROW.replace(",0.1,", ",left,", 1)]), "skip"),
        ("xmin_nan", oi([_OI_ROW.replace(",0.1,", ",nan,", 1)]), "skip"),
        ("xmax_before_xmin", oi([_OI_ROW.replace("0.1,0.4", "0.4,0.1", 1)]), "skip"),
        ("pixel_coordinates", oi([_OI_ROW.replace("0.1,0.4,0.2,0.6", "10,40,20,60", 1)]), "skip"),
        ("flag_two", oi([_OI_ROW[:-1] + "2"]), "skip"),
        ("unknown_label", oi([_OI_ROW.replace("/m/0d4v4", "/m/zzzz", 1)]), "skip"),
        ("image_id_traversal", oi([_OI_ROW.replace("img,", "../../etc/passwd,", 1)]), "skip"),
        ("nul_in_coordinate", oi([_OI_ROW.replace(",0.1,", ",0.\x001,", 1)]), "skip"),
        ("huge_field", oi([_OI_ROW.replace("xclick", '"' + "x" * 200_000 + '"')]), "reject"),
        ("latin1_bytes", {"boxes.csv": (_OI_HEADER + "\n" + _OI_ROW.replace("xclick", "x\xe9")).encode("latin-1"),
                          "desc.csv": _OI_DESC}, "reject"),
        ("descriptions_three_columns", oi([_OI_ROW], desc=b"/m/0d4v4,Window,extra\n"), "reject"),
        ("descriptions_empty", oi([_OI_ROW], desc=b""), "reject"),
    ]
    return [AnnotationCase("openimages", r[0], r[1], r[2], r[3] if len(r) > 3 else "") for r in rows]


def annotation_cases() -> list[AnnotationCase]:
    return coco_cases() + voc_cases() + openimages_cases()

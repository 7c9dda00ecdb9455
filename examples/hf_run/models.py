"""A user's factories for two HF zoo models (experiment of issue 18)."""

from whynet.zoo import load_model


def minilm():
    model, info = load_model("minilm-sentiment")
    return model, {"tokenizer": info["tokenizer"], "classes": info["class_names"]}


def vit():
    model, info = load_model("canvas-vit")
    return model, {"classes": info["class_names"]}


def reviews_train():
    from whynet.data.text import rotten_tomatoes

    ds = rotten_tomatoes("train")
    return {"text": ds.texts[:300], "label": ds.y[:300].tolist()}


def reviews_explain():
    from whynet.data.text import rotten_tomatoes

    ds = rotten_tomatoes("test")
    return {"text": ds.texts[:8], "label": ds.y[:8].tolist()}


def canvas_train():
    from whynet.data.canvas import canvas

    return canvas("train", n=300).tensors()


def canvas_explain():
    from whynet.data.canvas import canvas

    return canvas("test", n=8).tensors()


def canvas_boxes():
    from whynet.data.canvas import canvas

    return canvas("test", n=8).boxes

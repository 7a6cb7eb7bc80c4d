"""Thumbnail function: on every image uploaded to the source bucket, write a 128 px thumbnail
to the thumbnails bucket. Runs unchanged on AWS Lambda and on Gureum."""

import io
import os
import urllib.parse

import boto3
from PIL import Image

SIZE = (128, 128)
s3 = boto3.client("s3")


def handler(event, context):
    target = os.environ.get("THUMBNAIL_BUCKET", "thumbnails")
    made = []
    for record in event["Records"]:
        bucket = record["s3"]["bucket"]["name"]
        key = urllib.parse.unquote_plus(record["s3"]["object"]["key"])
        original = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        with Image.open(io.BytesIO(original)) as image:
            image.thumbnail(SIZE)
            out = io.BytesIO()
            image.save(out, format="PNG")
        name = "thumbs/" + key.rsplit(".", 1)[0] + ".png"
        s3.put_object(Bucket=target, Key=name, Body=out.getvalue(), ContentType="image/png")
        made.append(name)
    print("made", made)
    return {"thumbnails": made}

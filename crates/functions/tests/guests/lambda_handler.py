"""A Python Lambda handler for Gantry's tests, run unmodified by the official
runtime interface client: `python -m awslambdaric lambda_handler.handle`."""

import json


def handle(event, context):
    path = event.get("rawPath", "")
    print(f"python handler got {path}")
    if path.endswith("/fail"):
        raise ValueError("the handler was asked to fail")
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(
            {
                "path": path,
                "request_id": context.aws_request_id,
                "function": context.function_name,
                "has_deadline": context.get_remaining_time_in_millis() > 0,
            }
        ),
    }

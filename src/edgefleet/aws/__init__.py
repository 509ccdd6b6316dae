"""The AWS side of edgefleet: policies, provisioning and the production path.

    policies      AWS IoT policy documents for agents and the backend, generated from
                  ``edgefleet.wire.policy`` (the same source as the Mosquitto ACL)
    policy_eval   a small evaluator for the subset of the IoT policy language used here,
                  and one for Mosquitto ACL files, so tests can prove the two agree
    provision     thing, group, certificate, policy; revoke (boto3, extra ``aws``)
    provision_cli ``edgefleet provision``: arguments in, env-file lines out
    lambda_slack  the Lambda handler posting alerts to Slack (standard library only)

Nothing here imports boto3 at module level except ``provision``, so ``lambda_slack`` and
``policies`` work where boto3 is not installed.
"""

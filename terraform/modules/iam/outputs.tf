output "sagemaker_role_arn" {
  description = "Execution role of training jobs and models (the pipeline's DD_ROLE_ARN)."
  value       = aws_iam_role.sagemaker.arn
}

output "codebuild_role_arn" {
  description = "Service role of the CodeBuild project."
  value       = aws_iam_role.codebuild.arn
}

output "api_lambda_role_arn" {
  description = "Execution role of the predict Lambda."
  value       = aws_iam_role.api_lambda.arn
}
